"""Operations on a running server: model control (:mod:`.control`), rollouts (:mod:`.rollout`)
and load tests (:mod:`.loadtest` runner, :mod:`.gate` release gate, :mod:`.traffic` hosts,
k mix and histories). Import the sub-modules; nothing is re-exported here."""
