"""The image tier: the pycalico/node image of deploy/image/, run as deploy/pycalico.yaml runs it.

Not part of the normal run: it builds a Debian root filesystem (root, network, minutes), so it runs
by hand with ``PYCALICO_IMAGE_TESTS=1`` and is skipped, with that reason, otherwise.
"""
