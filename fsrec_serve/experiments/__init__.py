"""Experiment protocols that use adaptation: few-shot cold-start users and items (``coldstart``),
the k-shot benchmark with inner-user selection and two-level bootstrap (``kshot_folds``, ``kshot``),
users who arrive after training (``arrivals``), the MetaRec rating protocol (``metarec``).

This package sits after ``adaptation`` in the layer order (it imports adaptation and evaluation;
nothing below imports it). Import the modules themselves: nothing is re-exported here.
"""
