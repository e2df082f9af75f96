// /pose: a photo with the caption "/pose [prompt]", or "/pose [prompt]" sent as a reply to a photo.
import { Composer, type Context } from 'telegraf';
import { message } from 'telegraf/filters';
import { pose } from '../../shared/pose.ts';
import { hasFile, incomingFile, personOf, replyTo, type TelegramDeps } from '../context.ts';

const POSE_CAPTION = /^\/pose(?:@\w+)?(?:\s+([\s\S]*))?$/i;

export function poseFeature(deps: TelegramDeps) {
  const feature = new Composer();
  const poseFrom = async (ctx: Context, source: unknown, prompt: string) => {
    const p = await personOf(deps, ctx);
    const image = hasFile(source) ? incomingFile(ctx.telegram, source, p.t('photos.photo')) : undefined;
    await replyTo(deps, ctx, await pose(deps.conversation, p, image, prompt));
  };
  feature.command('pose', (ctx) => poseFrom(ctx, ctx.message.reply_to_message, ctx.payload));
  // Must run before the /train photo handler: a captioned photo is a request, not a training photo.
  feature.on([message('photo'), message('document')], async (ctx, next) => {
    const match = POSE_CAPTION.exec(ctx.message.caption ?? '');
    if (!match) return next();
    await poseFrom(ctx, ctx.message, match[1] ?? '');
  });
  return feature;
}
