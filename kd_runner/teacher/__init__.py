"""The teacher side of a run: fine-tune or load the teacher (cached), ensembles, and its logits as soft targets."""
