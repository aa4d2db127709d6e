"""Recipes behind the example scripts: GLUE tasks and metrics, the torchvision models, image data and the
thesis' training regimes, and the shared run stage (layered settings, train → evaluate → save, the eval
timeline). Their extra dependencies come with ``pip install mmr-transformers[glue]`` / ``[vision]``."""
