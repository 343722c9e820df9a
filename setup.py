"""The optional native part of the data path (tunnel/_fastpath.c, docs/datapath.md).

Everything else is in pyproject.toml. The extension needs a C compiler, Python's
headers and OpenSSL's (Debian: gcc python3-dev libssl-dev); where they are missing
the build says so and goes on, and the agent runs the same protocol in Python.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tunnel._fastpath",
            sources=["tunnel/_fastpath.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
