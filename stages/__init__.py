"""Built-in clipsr stages, registered as plugins through the `clipsr` entry-point group."""
