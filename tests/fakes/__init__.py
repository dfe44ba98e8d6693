"""HTTP fakes of the engines the adapters drive (vLLM, SGLang, FastDeploy).

Test code, never shipped."""
