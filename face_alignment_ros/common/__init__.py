"""What training, evaluation and ros all read: metrics, I/O formats, sample data (see docs/ARCHITECTURE.md)."""
