"""The Ray layer: thin actor wrappers around the core classes, and the driver that runs them."""
