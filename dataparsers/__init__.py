"""nerfstudio dataparser specifications (entry points ``nerfstudio.dataparser_configs``)."""

from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from headstudio.dataparsers.flame_video import FlameVideoDataParserConfig, KinectDataParserConfig

flame_video_data = DataParserSpecification(
    config=FlameVideoDataParserConfig(),
    description="FLAME-tracked monocular video (IMavatar, NerFace or INSTA layout)",
)
kinect_data = DataParserSpecification(
    config=KinectDataParserConfig(),
    description="MonoNPHM-style Kinect RGB-D sequence (depth for geometry evaluation)",
)
