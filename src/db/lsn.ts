/**
 * PostgreSQL log sequence numbers as 64-bit integers. `'0/10' > '0/9'` as text is false, so LSNs
 * are never compared as strings.
 */
export type Lsn = bigint;

const LSN_PATTERN = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/;

export const parseLsn = (text: string): Lsn => {
  const match = LSN_PATTERN.exec(text);
  if (!match) {
    throw new Error(`not a pg_lsn: ${JSON.stringify(text)}`);
  }
  return (BigInt(`0x${match[1]}`) << 32n) | BigInt(`0x${match[2]}`);
};

export const formatLsn = (lsn: Lsn): string =>
  `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;

export const lsnReached = (target: string, position: Lsn): boolean => parseLsn(target) <= position;
