// Every English string the bots say. `{name}` is filled in by translate(); ru.ts has exactly the same keys and
// placeholders (test/i18n.test.ts checks both).
export const en = {
  'lang.name': 'English',

  'help.body':
    'I paint portraits of you.\n\n' +
    '1. /train — send me {min}–{max} photos of yourself, then tap “Train now”.\n' +
    '2. /imagine <what> — a portrait of you, e.g. /imagine me as an astronaut.\n' +
    '3. {poseLine}\n\n' +
    '/status — your photos, model and jobs\n/cancel — stop the running job\n' +
    '/forget — delete everything about you\n/link — use the same account on Telegram and Discord\n/lang — language',
  'help.pose_telegram': '/pose — send a photo with the caption /pose (plus an optional prompt), or reply /pose to a photo: you, in that pose.',
  'help.pose_discord': '/pose image: prompt: — you, in the pose of the image.',
  'help.tiny_engine': 'Note: this server runs the tiny test engine (random weights), so the pictures are noise.',

  'train.open':
    'Send me {min}–{max} photos of yourself: one face per photo, well lit, different angles and backgrounds, no sunglasses. ' +
    'Send them one by one or as an album. Files are better than photos: Telegram compresses photos, files arrive untouched.\n' +
    'You have {have} so far.',
  'train.open_discord':
    'Attach {min}–{max} photos of yourself to /train (several per command; run it again to add more): one face per ' +
    'photo, well lit, different angles and backgrounds, no sunglasses. You have {have} so far.',
  'train.tip_files': 'Tip: send photos as files (📎 → File) — they arrive uncompressed and train better.',
  'train.no_session': 'To train your model, send /train first, then your photos.',
  'train.already': 'Your model is already training — /status shows how far it is.',

  'photos.photo': 'Photo',
  'photos.photo_n': 'Photo {n}',
  'photos.accepted': '✅ {name}: accepted.',
  'photos.duplicate': '☑️ {name}: you already sent this one.',
  'photos.rejected': '❌ {name}: {reason}',
  'photos.total': 'Photos: {total} (need {min}–{max}).',
  'photos.need_more': 'Send {more} more to start training.',
  'photos.enough': 'That is enough to train. Tap “Train now”, or send more first (up to {max}).',
  'photos.full': 'You have {max} photos, the most a training uses.',

  'coverage.summary': 'Your set: {frontal} facing the camera, {left} turned left, {right} turned right; {closeUp} close-ups, {wider} from further away.',
  'coverage.title': 'Before training, add:',
  'coverage.good': '👍 Good variety of angles, framing and light.',
  'coverage.expressions': 'Expressions can’t be measured from photos — vary them yourself: smiling, serious, laughing.',
  'coverage.more_photos': '{more} more photo(s): training needs at least {min}.',
  'coverage.more_angles': 'a few photos with your head turned left and right (all of them face the camera now).',
  'coverage.other_side': 'a photo with your head turned {side} too.',
  'coverage.side_left': 'left',
  'coverage.side_right': 'right',
  'coverage.wider_shots': 'a couple of photos taken from further away (head and shoulders).',
  'coverage.close_ups': 'a couple of close-ups of your face.',
  'coverage.more_lighting': 'photos in different light — indoors and outdoors, or at another time of day (all have similar light now).',

  'button.train_now': 'Train now',
  'button.forget_yes': 'Delete everything',
  'button.forget_no': 'Keep my data',

  'what.train': 'Training',
  'what.imagine': 'Portrait',
  'what.pose': 'Pose portrait',

  'progress.queued': '⏳ {what}: waiting in line, position {position}.',
  'progress.starting': '⚙️ {what}: starting…',
  'progress.train': '🧠 Training your model: step {step} of {total}\n{bar} {percent}%',
  'progress.generate': '🎨 {what}: step {step} of {total}\n{bar} {percent}%',
  'done.train': '✅ Your model (version {version}) is ready! Try /imagine me as an astronaut.',
  'done.generate': '✅ {what} done.',
  'done.samples': 'Sample portraits from your new model. Likeness to a photo of you it never saw: {score} (1 is identical).',
  'done.samples_unscored': 'Sample portraits from your new model (likeness is not measured here: the face models are not installed).',
  'done.low_likeness': '⚠️ The likeness is low ({score}). Add more varied photos of yourself — other angles, other light — and train again.',
  'done.caption': '“{prompt}” · seed {seed}',
  'failed.train': '❌ Training failed: {reason} It does not count against your daily trainings — tap “Train now” or send /train to try again.',
  'failed.generate': '❌ {what} failed: {reason} It does not count against your hourly limit — please try again.',
  'cancelled': '🚫 {what} cancelled.',

  'reason.bad_request': 'the engine refused the request.',
  'reason.not_found': 'your model or photos were deleted meanwhile.',
  'reason.busy': 'the engine is overloaded.',
  'reason.queue_unavailable': 'the job queue was unavailable.',
  'reason.internal': 'something went wrong on our side.',

  'pose.preview': 'Your pose — painting you in it now…',
  'pose.usage': 'Send a photo with the caption /pose (optionally followed by a prompt), or reply /pose to a photo.',

  'status.photos': 'Photos: {count} (training needs {min}–{max}).',
  'status.model_ready': 'Model: version {version}, ready.',
  'status.model_training': 'Model: training now.',
  'status.model_none': 'Model: none yet — /train.',
  'status.job': '• {what}: {state}',
  'status.no_jobs': 'Nothing running.',
  'state.queued': 'waiting, position {position}',
  'state.active': 'running, {percent}%',
  'state.completed': 'done',
  'state.failed': 'failed',
  'state.cancelled': 'cancelled',

  'cancel.done': '🚫 Cancelled: {what}.',

  'forget.confirm': 'This deletes your photos, models and pictures — on every linked platform — and cannot be undone. Are you sure?',
  'forget.done': '🗑 Everything about you is deleted ({photos} photos, {adapters} models, {generations} pictures). Send /start to begin again.',
  'forget.kept': 'Nothing was deleted.',

  'link.code': 'Your link code: {code}\nSend /link {code} to me on the other platform within {minutes} minutes. Photos, models and limits are then shared.',
  'link.done': '✅ Linked. This account now shares photos, models and limits with your other one.',

  'lang.usage': 'Choose a language: /lang en or /lang ru.',
  'lang.set': 'Language: English.',

  'error.internal': 'Something went wrong on our side. Please try again.',
  'error.download_failed': 'I could not download this file — please send it again.',
  'error.empty': 'the file is empty (0 bytes) — the upload probably failed; please send it again.',
  'error.too_large_bytes': 'the file is larger than {maxMb} MB; please send a smaller photo.',
  'error.not_an_image': 'this file is not a picture. Please send a JPEG, PNG or WebP photo.',
  'error.unsupported_format': 'this picture format can’t be read. Please send a JPEG, PNG or WebP photo.',
  'error.truncated': 'the picture is damaged or cut off — please send it again.',
  'error.too_many_pixels': 'the picture is too large in pixels; please send a normal photo.',
  'error.animated': 'animated pictures can’t be used — send a still photo.',
  'error.too_small': 'the picture is only {width}×{height} pixels; photos need at least {minShortSide} pixels on the short side.',
  'error.no_face': 'no face found — send a photo where your face is clearly visible.',
  'error.several_faces': '{faces} faces in this photo — crop it to just you.',
  'error.face_cut_off': 'your face is cut off at the edge — send one with your whole face in the frame.',
  'error.face_too_small': 'your face is too small here — come closer or send the original, full-resolution photo.',
  'error.too_dark': 'your face is too dark — take it facing a window or a lamp.',
  'error.too_bright': 'your face is overexposed — avoid direct sun or flash.',
  'error.too_blurry': 'too blurry — hold the camera still, focus on your face, and try again.',
  'error.duplicate': 'the same shot as photo {sameAs} — send a different one.',
  'error.no_person': 'No person found in this picture — send a photo where one whole person is clearly visible.',
  'error.several_people': '{people} people in this picture — send one with just one person.',
  'error.too_many_photos': 'you already have {max} photos, the most a training uses.',
  'error.not_enough_photos': 'Training needs at least {need} good photos; you have {have}. Send {more} more.',
  'error.empty_prompt': 'Tell me what to paint, e.g. /imagine me as an astronaut.',
  'error.prompt_too_long': 'That prompt is {length} characters; the limit is {max}. Please shorten it.',
  'error.bad_options': 'Some settings are not valid.',
  'error.training_in_progress': 'Your model is still training — I will tell you when it is ready.',
  'error.no_model': 'You have no trained model yet: send /train and {min}–{max} photos of yourself first.',
  'error.nothing_to_cancel': 'There is nothing running to cancel.',
  'error.queue_unavailable': 'The job queue is unavailable right now; please try again in a minute.',
  'error.queue_full': 'The queue is full right now ({max} waiting). Please try again in a few minutes.',
  'error.limit_active_jobs': 'You already have {max} jobs running or waiting. Wait for one to finish, or /cancel it.',
  'error.limit_generations': 'You have made {max} pictures in the last hour, the hourly limit. Try again in {minutes} min.',
  'error.limit_trainings': 'You have started {max} trainings today, the daily limit. Try again in {hours} h.',
  'error.busy': 'I am still handling your previous request — try again in a moment.',
  'error.not_found': 'That was not found.',
  'error.link_attempts': 'Too many wrong link codes. Try again in {minutes} min — or send /link on the other platform for a new code.',
  'error.link_code_invalid': 'This link code is wrong or has expired. Send /link on the other platform for a new one.',
  'error.link_same_platform': 'Enter the code on the other platform (the one you did not get it on).',
  'error.link_already': 'These accounts are already linked.',
  'error.link_both_have_data':
    'Both accounts already have photos or models, and I can’t merge two sets. Use /forget on the one you want to drop, then link again.',
  'error.link_jobs_open': 'Wait until your running jobs finish (or /cancel them), then link again.',
  'error.no_pose_image': 'Attach the photo whose pose you want.',
  // Chats: delivery, groups, fallback, command menus.
  'done.documents': 'The same as files: the original PNGs, uncompressed.',
  'progress.forgotten': '🗑 {what}: stopped, because you asked me to forget everything about you.',
  'chat.private_only': 'Let’s do {command} in private, so nobody else sees it: write to me at @{bot}.',
  'chat.not_yours': 'This button belongs to the person who asked; it does nothing for you.',
  'chat.fallback': 'I didn’t understand that. Send /help to see what I can do.',
  'photos.duplicate_of': '☑️ {name}: the same photo as {other}; kept once.',
  'command.start': 'Start here',
  'command.help': 'What I can do',
  'command.train': 'Send photos of yourself to train your model',
  'command.imagine': 'A portrait of you',
  'command.pose': 'You, in the pose of a picture',
  'command.status': 'Your photos, model and jobs',
  'command.cancel': 'Stop your running job',
  'command.forget': 'Delete everything about you',
  'command.link': 'Use the same account on Telegram and Discord',
  'command.lang': 'Language of my answers',
  'error.duplicate_of': 'the same shot as {other} — send a different one.',
  'help.files': 'Photos can also be sent as files (uncompressed): that is better for training.',
} as const;

export type MessageKey = keyof typeof en;
