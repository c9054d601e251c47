"""RHD data: the official release format, the synthetic generator, the memo's layout and its packed HDF5 form."""
