"""The scenarios of tests/distribute_scenarios.py across processes and on JAX.

    python tests/multiworker_scenarios.py tf-multiworker [scenario ...]
    python tests/multiworker_scenarios.py jax-data-parallel [scenario ...]
    python tests/multiworker_scenarios.py jax-multiprocess [scenario ...]

`tf-multiworker`: two worker processes on localhost, each one CPU device,
joined by `tf.distribute.MultiWorkerMirroredStrategy` through `TF_CONFIG`
(the global batch of 64 split 32 + 32, as MirroredStrategy splits it over
two devices), and one single-device process for reference.

`jax-data-parallel`: one process with `KERAS_BACKEND=jax` and two host
devices (`XLA_FLAGS=--xla_force_host_platform_device_count=2`): each
scenario on one device, then under `keras.distribution.DataParallel` over
the two.

`jax-multiprocess`: two JAX processes on localhost, one CPU device each,
joined by `keras.distribution.initialize` (JAX's distributed runtime, Gloo
collectives on CPU) under `DataParallel` over both devices; the data is a
`tf.data.Dataset` of the global batches, which Keras shards per process.
Reference: one JAX process on one device, same data.

The last line of stdout is `{scenario: {"one": {...}, "two": {...}}}`, as
distribute_scenarios.py prints it.
"""

import json
import os
import socket
import subprocess
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 900


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _child(mode, names, env):
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), mode, *names], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _last_json(process, what):
    out, err = process.communicate(timeout=TIMEOUT)
    if process.returncode != 0:
        raise RuntimeError(f"{what} exited with status {process.returncode}:\n{err[-4000:]}")
    return json.loads(out.strip().splitlines()[-1])


def tf_multiworker(names):
    base = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KC_SPLIT_CPU="0", KERAS_BACKEND="tensorflow")
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    workers = [
        _child("worker", names, dict(base, TF_CONFIG=json.dumps({"cluster": cluster,
                                                                  "task": {"type": "worker", "index": i}})))
        for i in range(2)
    ]
    results = [_last_json(w, f"worker {i}") for i, w in enumerate(workers)]
    one = _last_json(_child("one", names, base), "the single-device run")
    # Both workers hold the same model after every step; worker 0's figures
    # are the run's, and worker 1's must equal them.
    return {name: {"one": one[name], "two": results[0][name], "worker_1": results[1][name]} for name in names}


def jax_multiprocess(names):
    base = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3", KC_SPLIT_CPU="0", KC_DATASET="1")
    port = _free_ports(1)[0]
    processes = [_child("jax-process", [str(i), str(port), *names], base) for i in range(2)]
    results = [_last_json(p, f"JAX process {i}") for i, p in enumerate(processes)]
    one = _last_json(_child("one", names, base), "the single-process JAX run")
    return {name: {"one": one[name], "two": results[0][name], "worker_1": results[1][name]} for name in names}


def jax_process(arguments):
    index, port, names = int(arguments[0]), arguments[1], arguments[2:]
    import jax
    import keras

    keras.distribution.initialize(job_addresses=f"localhost:{port}", num_processes=2, process_id=index)
    assert len(jax.devices()) == 2 and len(jax.local_devices()) == 1, (jax.devices(), jax.local_devices())
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    _print_scenarios(names)


def _scenarios():
    sys.path.insert(0, HERE)
    import distribute_scenarios

    return distribute_scenarios


def _print_scenarios(names, strategy=None):
    """Runs each named scenario (under `strategy`, if given) and prints the
    results as one JSON line."""
    scenarios = _scenarios()
    results = {}
    for name in names:
        scenario, initial = scenarios.SCENARIOS[name]
        results[name] = scenarios._run(scenario, initial(), strategy)
    print(json.dumps(results))


def worker(names):
    import tensorflow as tf

    # Created first: the strategy must exist before any collective op runs.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    _print_scenarios(names, strategy)


def one(names):
    _print_scenarios(names)


def jax_data_parallel(names):
    if os.environ.get("KERAS_BACKEND") != "jax":
        env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3", KC_SPLIT_CPU="0",
                   XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip())
        return _last_json(_child("jax-data-parallel", names, env), "the JAX process")
    import jax
    import keras

    devices = jax.devices("cpu")
    assert len(devices) == 2, devices
    scenarios = _scenarios()
    results = {}
    for name in names:
        scenario, initial = scenarios.SCENARIOS[name]
        weights = initial()
        results[name] = {"one": scenarios._run(scenario, weights)}
        try:
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
            results[name]["two"] = scenarios._run(scenario, weights)
        except Exception:  # noqa: BLE001 (reported in the results)
            results[name]["two"] = {"error": traceback.format_exc()}
        finally:
            keras.distribution.set_distribution(None)
    return results


MODES = {"tf-multiworker": tf_multiworker, "jax-data-parallel": jax_data_parallel,
         "jax-multiprocess": jax_multiprocess, "worker": worker, "one": one, "jax-process": jax_process}
DEFAULT = ["plain_keras", "pruning", "l1_threshold", "qat", "distillation", "first_batch_range"]

if __name__ == "__main__":
    mode = sys.argv[1]
    names = sys.argv[2:] or (DEFAULT if mode != "jax-process" else [])
    result = MODES[mode](names)
    if result is not None:
        print(json.dumps(result))
