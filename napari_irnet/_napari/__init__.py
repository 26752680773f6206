"""The napari plugin: everything of napari-irnet that needs napari (the core needs neither napari nor Qt)."""
