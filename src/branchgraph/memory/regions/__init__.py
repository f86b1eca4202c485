"""Candidate checkpoint regions: ranges of the traced graph (``graph``, timed in place by ``timing``), or whole
modules and runs of an ``nn.Sequential`` for models fx cannot trace (``modules``)."""
