// Every slash command, by name: the dispatcher and the deploy script both read this list.
import type { ButtonAction } from '../../shared/conversation.ts';
import type { ButtonHandler, SlashCommand } from '../context.ts';
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

/** The handler of a button's action, from the command whose answers carry that button. */
export function buttonHandler(action: ButtonAction): ButtonHandler | undefined {
  for (const { buttons } of commands.values()) {
    if (buttons?.actions.some((a) => (a.endsWith(':') ? action.startsWith(a) : action === a))) return buttons;
  }
  return undefined;
}
