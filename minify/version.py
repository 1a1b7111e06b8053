"""minify's version, in one small module: the writers stamp it into what they make
(the image's labels, the SBOM's creator, the facts cache's key) without importing
the public API module, which imports the pipeline."""

__version__ = "0.1.0"
