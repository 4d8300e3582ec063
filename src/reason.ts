/**
 * An error's one-line reason. Node's connection attempts to a name with several addresses fail
 * with an AggregateError whose own message is empty: its attempts' messages say what happened.
 */
export const reasonOf = (err: unknown, fallback?: string): string => {
  const { message, code, errors } = (err ?? {}) as {
    message?: unknown;
    code?: unknown;
    errors?: unknown;
  };
  if (typeof message === 'string' && message !== '') {
    return message;
  }
  const attempts = Array.isArray(errors) ? errors.map((e) => reasonOf(e, '')).filter(Boolean) : [];
  if (attempts.length > 0) {
    return [...new Set(attempts)].join('; ');
  }
  if (typeof code === 'string' && code !== '') {
    return code;
  }
  if (fallback !== undefined) {
    return fallback;
  }
  try {
    return String(err);
  } catch {
    // An object without a prototype has no toString.
    return 'unknown error';
  }
};
