"""bootd.http."""
