# Runs once in the guest: initialise the labels of the new NVDIMM so that it can be subdivided.
set -e
ndctl disable-region all
ndctl init-labels -f all
ndctl enable-region all
ndctl list -R
