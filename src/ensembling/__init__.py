"""TTA views chosen on OOF, the submission file, the ledger."""
