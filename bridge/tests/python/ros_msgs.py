"""rosbags as the independent reference for the bridge's other ROS 2 types: reads a JSON job on
stdin, {"hashes": [type names], "decode": [{"type": name, "cdr": hex}]}, and prints JSON with
rosbags' RIHS01 hash of each type (ROS 2 Jazzy) and each CDR payload deserialised into plain
JSON (messages as objects, arrays as lists).

Imported by ros_camera.py for the same type store (vision_msgs registered) and `plain`."""
import json
import sys

import numpy as np
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

ts = get_typestore(Stores.ROS2_JAZZY)
# vision_msgs (ros-perception/vision_msgs 4.x, Jazzy) is not in rosbags' Jazzy store: its .msg
# files, registered the way rosbags registers any package.
VISION_MSGS = {
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/Classification":
        "std_msgs/Header header\nvision_msgs/ObjectHypothesis[] results\n",
    "vision_msgs/msg/VisionClass": "uint16 class_id\nstring class_name\n",
    "vision_msgs/msg/LabelInfo":
        "std_msgs/Header header\nvision_msgs/VisionClass[] class_map\nfloat32 threshold\n",
}
types = {}
for name, text in VISION_MSGS.items():
    types.update(get_types_from_msg(text, name))
ts.register(types)


def plain(v):
    if hasattr(v, "__dataclass_fields__"):
        return {k: plain(getattr(v, k)) for k in v.__dataclass_fields__ if k != "__msgtype__"}
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


if __name__ == "__main__":
    job = json.load(sys.stdin)
    out = {
        "hashes": {t: ts.hash_rihs01(t) for t in job.get("hashes", [])},
        "decoded": [plain(ts.deserialize_cdr(bytes.fromhex(d["cdr"]), d["type"]))
                    for d in job.get("decode", [])],
    }
    print(json.dumps(out))
