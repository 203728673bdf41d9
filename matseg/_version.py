"""matseg's version, in a leaf module so that lower modules never import the package top."""

__version__ = "0.1.0"
