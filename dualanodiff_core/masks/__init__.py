"""Masks: the table of mask methods, extraction and clean-up, U-2-Net, SAM."""
