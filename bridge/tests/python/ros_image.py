"""Golden ROS 2 bytes from rosbags: reads a JSON Image description on stdin and prints JSON with
the CDR serialisation (hex, little-endian, with its encapsulation header) and the RIHS01 hash of
sensor_msgs/msg/Image for ROS 2 Jazzy."""
import json
import sys

import numpy as np
from rosbags.typesys import Stores, get_typestore

ts = get_typestore(Stores.ROS2_JAZZY)
Image = ts.types["sensor_msgs/msg/Image"]
Header = ts.types["std_msgs/msg/Header"]
Time = ts.types["builtin_interfaces/msg/Time"]

d = json.load(sys.stdin)
msg = Image(
    header=Header(stamp=Time(sec=d["sec"], nanosec=d["nanosec"]), frame_id=d["frame_id"]),
    height=d["height"],
    width=d["width"],
    encoding=d["encoding"],
    is_bigendian=0,
    step=d["step"],
    data=np.frombuffer(bytes.fromhex(d["data"]), dtype=np.uint8),
)
cdr = ts.serialize_cdr(msg, "sensor_msgs/msg/Image", little_endian=d.get("little_endian", True))
print(json.dumps({"cdr": bytes(cdr).hex(), "hash": ts.hash_rihs01("sensor_msgs/msg/Image")}))
