"""Dataset generation: the generate command and the dataset layout it shares with the Save Dataset node."""
