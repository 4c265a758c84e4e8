"""640 nodes fetch their cloud-init seed at the same moment: bootd against nginx serving static files."""
