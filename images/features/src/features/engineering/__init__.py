"""Feature engineering, the ``build`` stage: the computation (:mod:`.compute`), the training snapshot
(:mod:`.snapshot`) and the scoring features (:mod:`.scoring`), which use the same computation."""
