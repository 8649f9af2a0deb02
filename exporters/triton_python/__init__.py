"""The Triton python-backend model (copied into each repository version as ``model.py``)."""
