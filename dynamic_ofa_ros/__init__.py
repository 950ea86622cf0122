"""Dynamic-OFA for ROS 2: runtime switching between OFA sub-networks to keep a latency budget.

The ROS-free core (``arch``, ``supernet``, ``levels``, ``engine``, ``manager``, ``coordinator``,
``preprocess``) imports no rclpy; ``node`` is the ROS 2 front end, ``ros_tools`` the
tools around it (demo, replay_eval, node_bench).
"""

from pkgutil import extend_path

# The generated interfaces (dynamic_ofa_ros.msg/.srv) live in the colcon install space; when the
# source tree is first on sys.path (running from the repo root), extend the package path so that
# both halves are found.
__path__ = extend_path(__path__, __name__)
