"""The offline Kaggle dataset and notebook, its rehearsal, wheels."""
