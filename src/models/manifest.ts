// Every model file the project uses, from pinned sources. `sha256` is the published digest where one could be
// verified (two independent public manifests agreeing, named beside each pin); entries without one are downloaded
// and their digest printed so it can be pinned here — until then the downloader says "not verified".
export interface ModelFile {
  /** Path inside the models folder. */
  path: string;
  url: string;
  sha256?: string;
  bytes?: number;
}

export interface ModelEntry {
  id: string;
  /** Which feature needs it. */
  usedFor: string;
  license: string;
  files: ModelFile[];
}

// A commit on opencv_zoo's main that holds both released files (YuNet 2023mar and the float32 SFace 2021dec). Two
// independent projects' manifests pin this same commit with the same two digests and sizes.
const OPENCV_ZOO_REVISION = '47534e27c9851bb1128ccc0102f1145e27f23f98';
const OPENCV_ZOO = `https://github.com/opencv/opencv_zoo/raw/${OPENCV_ZOO_REVISION}/models`;
const HF = (repo: string, revision: string, file: string) => `https://huggingface.co/${repo}/resolve/${revision}/${file}`;
const SD15 = 'stable-diffusion-v1-5/stable-diffusion-v1-5';
const OPENPOSE = 'lllyasviel/control_v11p_sd15_openpose';

export const MODEL_MANIFEST: readonly ModelEntry[] = [
  {
    id: 'yunet',
    usedFor: 'face detection for /train photo checks and crops',
    license: 'MIT',
    files: [{
      path: 'face_detection_yunet_2023mar.onnx',
      url: `${OPENCV_ZOO}/face_detection_yunet/face_detection_yunet_2023mar.onnx`,
      sha256: '8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4',
      bytes: 232_589,
    }],
  },
  {
    id: 'sface',
    usedFor: 'face embeddings: likeness scores and near-duplicate photos',
    license: 'Apache-2.0',
    files: [{
      path: 'face_recognition_sface_2021dec.onnx',
      // The released float32 model (on main since 2022). Not the float16 build of unmerged pull request #183, whose
      // float16 input and output src/vision/onnx.ts cannot feed.
      url: `${OPENCV_ZOO}/face_recognition_sface/face_recognition_sface_2021dec.onnx`,
      sha256: '0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79',
      bytes: 38_696_353,
    }],
  },
  {
    id: 'dwpose',
    usedFor: '/pose person detection and whole-body keypoints',
    license: 'Apache-2.0',
    files: [
      { path: 'yolox_l.onnx', url: HF('yzd-v/DWPose', 'main', 'yolox_l.onnx') },
      { path: 'dw-ll_ucoco_384.onnx', url: HF('yzd-v/DWPose', 'main', 'dw-ll_ucoco_384.onnx') },
    ],
  },
  {
    id: 'sd15',
    usedFor: 'the base diffusion model (ENGINE_BASE_MODEL=<models>/sd15)',
    license: 'CreativeML OpenRAIL-M',
    files: [
      'model_index.json', 'scheduler/scheduler_config.json',
      'text_encoder/config.json', 'text_encoder/model.safetensors',
      'tokenizer/merges.txt', 'tokenizer/special_tokens_map.json', 'tokenizer/tokenizer_config.json', 'tokenizer/vocab.json',
      'unet/config.json', 'unet/diffusion_pytorch_model.safetensors',
      'vae/config.json', 'vae/diffusion_pytorch_model.safetensors',
    ].map((f) => ({ path: `sd15/${f}`, url: HF(SD15, 'main', f) })),
  },
  {
    id: 'controlnet-openpose',
    usedFor: '/pose generation (ENGINE_CONTROLNET=<models>/controlnet-openpose)',
    license: 'OpenRAIL',
    files: ['config.json', 'diffusion_pytorch_model.safetensors'].map((f) => ({ path: `controlnet-openpose/${f}`, url: HF(OPENPOSE, 'main', f) })),
  },
];
