// Every slash command, by name: the dispatcher and the deploy script both read this list.
import type { SlashCommand } from '../context.ts';
import { train } from './train.ts';
import { imagine } from './imagine.ts';
import { pose } from './pose.ts';
import { status } from './status.ts';
import { cancel } from './cancel.ts';
import { forget } from './forget.ts';
import { link } from './link.ts';
import { lang } from './lang.ts';
import { help } from './help.ts';
import { styles } from './styles.ts';
import { admin } from './admin.ts';

export const commands: ReadonlyMap<string, SlashCommand> = new Map(
  [train, imagine, styles, pose, status, cancel, forget, link, lang, help, admin].map((c) => [c.definition.name, c]),
);
