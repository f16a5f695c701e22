"""Alignment of the generator (MediPhi's last steps): preference pairs that reward grounded,
factual rationales (``preferences``); SFT and DPO steps build on them."""
