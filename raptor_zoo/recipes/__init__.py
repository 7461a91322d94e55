"""The recipes' configs and training functions, one module per recipe; `recipes/<name>.py` at the top of the
repository launches each with `accelerate launch` (its docstring gives the commands).

* :mod:`raptor_zoo.recipes.distill` - :class:`DistillConfig`, :func:`training_function`: a teacher ViT distilled
  into a Raptor (`raptor-zoo demo` runs it in-process);
* :mod:`raptor_zoo.recipes.finetune` - :class:`FinetuneConfig`, :func:`training_function`: a Raptor or timm model
  fine-tuned for classification;
* :mod:`raptor_zoo.recipes.linear_probe` - :class:`ProbeConfig`, :func:`linear_probe_function`: a frozen backbone's
  linear probe, and a Raptor's recovery of its teacher's accuracy;
* :mod:`raptor_zoo.recipes.train_teacher` - :class:`TrainTeacherConfig`, :func:`training_function`: a timm classifier
  (the embedded digits teacher) trained from scratch.

Every config inherits the shared data fields of :class:`raptor_zoo.data.DataArgs` (``dataset``, splits, size limits,
subset seed) and loads its data through :meth:`~raptor_zoo.data.DataArgs.load_splits`. The modules are imported on
demand (``from raptor_zoo.recipes.finetune import FinetuneConfig``), so loading one recipe loads no other.
"""
