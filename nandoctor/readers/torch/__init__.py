"""The PyTorch file family: zip and legacy formats, the restricted unpickler, nested names, validated views."""
