"""A path opened once into one :class:`Checkpoint`: its files, tensors (each with a role), notes and problems.

``layout`` says which files make up a checkpoint, ``hubcache`` finds a repo id
in the local caches, ``runs`` reads training run folders, ``roles`` decides
what each tensor is (model weight, buffer, optimizer or trainer state), and
``opener`` reads every file through the readers. Scan, repair's donors and
every later consumer take the same ``Checkpoint``; nobody else loops over readers.
"""
