"""The napari plugin: everything of napari-irnet that needs napari (the core needs neither napari nor Qt).

Where things are:

- ``context.py``: :class:`~.context.ViewerContext`, one evented, Qt-free object
  per viewer through which the panels share the current image, the
  checkpoint, the device, the open project, the images worked on (an
  :class:`~.context.ImageSession` each: run result, stage cache, annotation,
  store) and the run in progress. No panel touches another's widgets.
- The three dock widgets, which only assemble their parts and connect them:
  ``irnet_widget.py`` (run, tune, correct), ``project_widget.py`` (walk
  through a project), ``finetune_widget.py`` (train from corrections).
- ``widgets/``: the small sections they are made of (no jobs, no layers).
- The IRNet panel's parts: ``model_loader.py`` (the checkpoint read in the
  background), ``runner.py`` (a Run), ``scheduler.py`` (live re-runs:
  debounced, latest wins), ``layer_sync.py`` (the stage layers),
  ``edit_actions.py`` and ``edit_history.py`` (corrections, undo, centroid
  edits), ``shortcuts.py``. The Project panel's: ``project_autosave.py``,
  ``project_handover.py``. The Fine-tune panel's: ``finetune_compare.py``.
- Jobs as plain functions and generators, wrapped in workers only at the GUI
  edge (``workers.py``): ``jobs.py``, ``project_jobs.py``, ``finetune_jobs.py``.
- ``layers.py`` (stage results as layer data), ``stores.py`` (an image's one
  store of corrections), ``recent.py``, and the manifest's contributions:
  ``reader.py``, ``project_reader.py``, ``writer.py``, ``sample_data.py``.
- ``annotators.py``: the panels from a script (``napari_irnet.annotate``,
  ``napari_irnet.annotate_project``).
"""
