import { pino } from 'pino';

export type Logger = pino.Logger;

/** The one root logger; modules take `log.child({ module })`. Secrets never reach the output. */
export const createLogger = (level: string, destination?: pino.DestinationStream): Logger =>
  pino(
    {
      level,
      base: { service: 'outpost' },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: {
        paths: [
          'req.headers.authorization',
          'headers.authorization',
          'authorization',
          '*.password',
          'config.adminToken',
          'adminToken',
          'token',
        ],
        censor: '***',
      },
    },
    destination,
  );
