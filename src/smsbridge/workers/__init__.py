"""Stage handlers: what each worker role does with one message."""
