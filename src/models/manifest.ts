// Every model file the project uses, from pinned sources (a commit, never a branch). `sha256` is the published
// digest where one could be verified (two independent public manifests agreeing, named beside each pin); a file
// without one has its digest recorded on its first download (models-digests.json in the models folder), and later
// runs check it against that record.
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
// DWPose: revision, digests and sizes as pinned by chelij/papan (src/pose.js) and, independently, by a ComfyUI
// model-fetch catalog ("dwpose-onnx", revision sha 1a71441…, both files with digest and size); a third project's
// DWPose acquisition script pins the same revision with the same dw-ll digest and size.
const DWPOSE_REVISION = '1a7144101628d69ee7a3768d1ee3a094070dc388';
// SD1.5: the revision most public manifests pin. The three weight files' digests and sizes agree across a Rust
// model manifest (hf_repo stable-diffusion-v1-5/stable-diffusion-v1-5), a verification script for the ModelScope
// mirror (AI-ModelScope/stable-diffusion-v1-5, "expected values from ModelScope repo/files"), a model-detection
// hash table ("sd1", "diffusers safetensors") and, for the VAE, a Hugging Face cache scan of this very snapshot
// (blob a2b5134f…). The small JSON/text files have no published sha256 (the cache scan shows git sha1s only).
const SD15_REVISION = '451f4fe16113bff5a5d2269ed5ad43b0592e9a14';
const SD15_WEIGHTS: Record<string, { sha256: string; bytes: number }> = {
  'text_encoder/model.safetensors': { sha256: 'd008943c017f0092921106440254dbbe00b6a285f7883ec8ba160c3faad88334', bytes: 492_265_874 },
  'unet/diffusion_pytorch_model.safetensors': { sha256: '19da7aaa4b880e59d56843f1fcb4dd9b599c28a1d9d9af7c1143057c8ffae9f1', bytes: 3_438_167_540 },
  'vae/diffusion_pytorch_model.safetensors': { sha256: 'a2b5134f4dbc140d9c11f11cba3233099e00af40f262f136c691fb7d38d2194c', bytes: 334_643_276 },
};
// ControlNet 1.1 openpose: the revision pinned by enfugue's ControlNet table, a model catalog and a Hugging Face
// cache snapshot map. No two public sources give the digest of its float32 safetensors: recorded on first download.
const OPENPOSE_REVISION = '9ae9f970358db89e211b87c915f9535c6686d5ba';
// The safety checker: SD1.5's safety_checker and feature_extractor folders at SD15_REVISION, the same model as
// CompVis/stable-diffusion-safety-checker. pytorch_model.bin's digest and size agree across a Hugging Face cache scan
// of this very snapshot (blob 193490b5…, 1,216,061,799 B), a desktop app's pinned SD1.5 download list (runwayml
// revision 889b629…, the same digest) and two more cache listings of the runwayml repo. Its safetensors copy and the
// two JSON files have no sha256 in two public sources (the cache scan gives git sha1s and sizes only): recorded on
// first download.
const SAFETY_CHECKER_WEIGHTS = { sha256: '193490b58ef62739077262e833bf091c66c29488058681ac25cf7df3d8190974', bytes: 1_216_061_799 };

/** The models a CPU-only install needs (face checks, likeness, /pose extraction): about 390 MB, no diffusion. */
export const CPU_MODEL_IDS = ['yunet', 'sface', 'dwpose'] as const;

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
      {
        path: 'yolox_l.onnx', url: HF('yzd-v/DWPose', DWPOSE_REVISION, 'yolox_l.onnx'),
        sha256: '7860ae79de6c89a3c1eb72ae9a2756c0ccfbe04b7791bb5880afabd97855a411', bytes: 216_746_733,
      },
      {
        path: 'dw-ll_ucoco_384.onnx', url: HF('yzd-v/DWPose', DWPOSE_REVISION, 'dw-ll_ucoco_384.onnx'),
        sha256: '724f4ff2439ed61afb86fb8a1951ec39c6220682803b4a8bd4f598cd913b1843', bytes: 134_399_116,
      },
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
    ].map((f) => ({ path: `sd15/${f}`, url: HF(SD15, SD15_REVISION, f), ...SD15_WEIGHTS[f] })),
  },
  {
    id: 'controlnet-openpose',
    usedFor: '/pose generation (ENGINE_CONTROLNET=<models>/controlnet-openpose)',
    license: 'OpenRAIL',
    files: ['config.json', 'diffusion_pytorch_model.safetensors'].map((f) => ({ path: `controlnet-openpose/${f}`, url: HF(OPENPOSE, OPENPOSE_REVISION, f) })),
  },
  {
    // In the full (GPU) set by default, never in the CPU set: only the engine's generation needs it.
    id: 'safety-checker',
    usedFor: 'the optional output check: flagged pictures are withheld (SAFETY_CHECKER=auto|on, ENGINE_SAFETY_CHECKER=<models>/safety-checker)',
    license: 'CreativeML OpenRAIL-M',
    files: [
      { path: 'safety-checker/config.json', url: HF(SD15, SD15_REVISION, 'safety_checker/config.json'), bytes: 4723 },
      { path: 'safety-checker/pytorch_model.bin', url: HF(SD15, SD15_REVISION, 'safety_checker/pytorch_model.bin'), ...SAFETY_CHECKER_WEIGHTS },
      // CLIPImageProcessor's settings, beside the weights so the folder loads on its own.
      { path: 'safety-checker/preprocessor_config.json', url: HF(SD15, SD15_REVISION, 'feature_extractor/preprocessor_config.json'), bytes: 342 },
    ],
  },
];
