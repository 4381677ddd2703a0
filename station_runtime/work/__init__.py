"""Durable async work: the work store, the auction, the witness, workflows. Pure decisions live in
:mod:`.phases`, :mod:`.scoring` and :mod:`.policy`; the rest does the I/O."""
