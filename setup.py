# Shim for tools that look for setup.py; the configuration is in setup.cfg.
from setuptools import setup

setup()
