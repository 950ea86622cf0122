"""ROS-side tools around the classifier node: the demo, a replay check and a node benchmark.

These programs drive the *installed* ``classifier_node`` as a separate process over real ROS 2
transport; they are not part of the runtime core:

* ``demo`` (``make demo``): camera stream from a rosbag, latency budgets by service, a
  co-located second classifier; prints a per-phase table and writes a timeline plot.
* ``replay_eval``: top-1 of each level measured through the running node (lock-step replay).
* ``node_bench``: what the node adds to the engine's latency (lock step, per frame size/level).

Dependency rule: this subpackage may import the core (``dynamic_ofa_ros``) and the design-time
``offline_tools``; the core never imports ``ros_tools`` (nor ``offline_tools``). Modules here
import rclpy and the generated interfaces lazily, inside the functions that need them.
"""
