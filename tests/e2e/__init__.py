"""What users run: the CLI, grpcurl, the container files and the scripts, as subprocesses."""
