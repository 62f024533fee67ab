"""Launch the face_alignment_ros graph with launch_ros (a full ROS 2 Jazzy install):

    ros2 launch face_alignment_ros face_alignment.launch.py image:=/camera/image_raw

Starts face_alignment_node and the lifecycle descent_model_node with config/face_alignment.yaml,
then configures and activates descent_model_node automatically. Where launch_ros is absent
(the PyPI venv), `face-align-ros --image-topic T --params FILE` brings up the same graph.

Both nodes get the package's Fast DDS profile (config/fastdds.xml) unless the environment names
one already (docs/ros.md, "Transport").
"""
import os

import launch
import launch.actions
import launch.events
import launch_ros.actions
import launch_ros.event_handlers
import launch_ros.events.lifecycle
import lifecycle_msgs.msg
from ament_index_python.packages import get_package_share_directory
from launch.substitutions import LaunchConfiguration
from launch_ros.parameter_descriptions import ParameterValue

from face_alignment_ros.ros.transport_profile import profile_environment


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("face_alignment_ros"), "config",
                                  "face_alignment.yaml")
    image = LaunchConfiguration("image")
    camera_info = LaunchConfiguration("camera_info")
    params = LaunchConfiguration("params")
    namespace = LaunchConfiguration("namespace")

    aligner = launch_ros.actions.Node(
        package="face_alignment_ros", executable="face_alignment_node", name="face_alignment_node",
        namespace=namespace, output="screen", remappings=[("image", image)],
        parameters=[params, {"camera_info_topic": ParameterValue(camera_info, value_type=str)}])
    model = launch_ros.actions.LifecycleNode(
        package="face_alignment_ros", executable="descent_model_node", name="descent_model_node",
        namespace=namespace, parameters=[params], output="screen")

    configure = launch.actions.EmitEvent(event=launch_ros.events.lifecycle.ChangeState(
        lifecycle_node_matcher=launch.events.matches_action(model),
        transition_id=lifecycle_msgs.msg.Transition.TRANSITION_CONFIGURE))
    activate_when_inactive = launch.actions.RegisterEventHandler(launch_ros.event_handlers.OnStateTransition(
        target_lifecycle_node=model, goal_state="inactive",
        entities=[launch.actions.EmitEvent(event=launch_ros.events.lifecycle.ChangeState(
            lifecycle_node_matcher=launch.events.matches_action(model),
            transition_id=lifecycle_msgs.msg.Transition.TRANSITION_ACTIVATE))]))

    # Set before the nodes start: Fast DDS reads it once, when each process's middleware loads.
    transport = [launch.actions.SetEnvironmentVariable(name, value) for name, value in profile_environment().items()]

    return launch.LaunchDescription([
        *transport,
        launch.actions.DeclareLaunchArgument("image", default_value="/camera/image_raw",
                                             description="sensor_msgs/Image input topic"),
        launch.actions.DeclareLaunchArgument("camera_info", default_value="",
                                             description="sensor_msgs/CameraInfo of the image; empty: "
                                                         "camera_info beside the image topic"),
        launch.actions.DeclareLaunchArgument("params", default_value=default_params,
                                             description="parameter YAML of both nodes"),
        launch.actions.DeclareLaunchArgument("namespace", default_value="", description="namespace of both nodes"),
        activate_when_inactive,
        aligner,
        model,
        configure,
    ])
