"""Workers: Ray actors that hold vLLM engines and measure whole trials.

Everything here runs on the worker nodes, except `pool.WorkerPool`, the controller's handle on the
actors. `engine` is the one place latts builds engines and generates, on CPU and GPU builds alike.
"""
