"""Knowledge bases: documents searched for the passages that answer a question."""
