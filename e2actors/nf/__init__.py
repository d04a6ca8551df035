"""Pipelets (the NF API), NF instances, built-in NFs."""
