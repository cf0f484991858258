"""Examples built on mtlkit."""
