/** An error the person can act on: `code` picks the message in the bot's language, `details` fills it in. */
export class UserFacingError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly details: Record<string, string | number> = {},
    readonly status = 400,
  ) {
    super(message);
    this.name = 'UserFacingError';
  }
}

export const notFound = (what: string) => new UserFacingError('not_found', `${what} not found.`, {}, 404);

/** Postgres unique_violation, used where a unique index is the guard against a race. */
export const isUniqueViolation = (error: unknown, constraint?: string): boolean => {
  const e = (error as { cause?: unknown }).cause ?? error;
  const pgError = e as { code?: string; constraint?: string };
  return pgError.code === '23505' && (constraint === undefined || pgError.constraint === constraint);
};
