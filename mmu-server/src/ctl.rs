//! What a MOV to CR0/CR3/CR4, CLTS, LMSW and a WRMSR to EFER do to the
//! paging controls, with the #GP(0) checks of the Intel SDM vol. 2 ("MOV —
//! Move to/from Control Registers") and the AMD APM vol. 2, 3.1. Pure
//! functions of the old state: the shadow MMU, the simulator's nested
//! mode and the tests' reference CPU all use them.
//!
//! The PDPTE registers of PAE paging are loaded from the PDPT that CR3
//! names whenever PAE paging is in use after a MOV to CR3, or after a MOV
//! to CR0/CR4 that changes CR0.PG/CD/NW or CR4.PAE/PGE/PSE (SDM vol. 3,
//! 4.4.1); a present PDPTE with a reserved bit makes the instruction fault
//! with #GP(0) and change nothing. A CPU without PDPTE registers
//! ([`CpuModel::pdptes_on_walk`]: AMD with nested paging) neither loads
//! nor checks them there; its walks read them.

use crate::regs::{cr0, cr4, efer, CpuModel, GuestCtl, PagingMode};
use crate::walk::GuestMemory;
pub use crate::walk::{load_pdptes, GeneralProtection};

/// Loads the PDPTE registers if `n` is in PAE mode, clears them otherwise.
fn refresh_pdptes<M: GuestMemory + ?Sized>(
    mem: &mut M,
    n: &mut GuestCtl,
    cpu: &CpuModel,
) -> Result<(), GeneralProtection> {
    n.pdptes = if n.mode() == PagingMode::Pae {
        load_pdptes(mem, n.cr3, cpu)?
    } else {
        [0; 4]
    };
    Ok(())
}

/// MOV to CR0. `value` is the source operand (32 bits outside long mode);
/// `code64` says the instruction runs in 64-bit mode (EFER.LMA and CS.L).
pub fn mov_to_cr0<M: GuestMemory + ?Sized>(
    mem: &mut M,
    old: &GuestCtl,
    cpu: &CpuModel,
    value: u64,
    code64: bool,
) -> Result<GuestCtl, GeneralProtection> {
    if value >> 32 != 0 {
        return Err(GeneralProtection);
    }
    let new = (value & cr0::DEFINED) | cr0::ET;
    if new & cr0::PG != 0 && new & cr0::PE == 0 {
        return Err(GeneralProtection);
    }
    if new & cr0::NW != 0 && new & cr0::CD == 0 {
        return Err(GeneralProtection);
    }
    let mut n = *old;
    n.cr0 = new;
    let was_paging = old.cr0 & cr0::PG != 0;
    let paging = new & cr0::PG != 0;
    if !was_paging && paging && old.efer & efer::LME != 0 {
        // Activating long mode needs PAE, and cannot happen from 64-bit code.
        if old.cr4 & cr4::PAE == 0 || code64 {
            return Err(GeneralProtection);
        }
        n.efer |= efer::LMA;
    }
    if was_paging && !paging && old.efer & efer::LMA != 0 {
        if code64 {
            return Err(GeneralProtection);
        }
        n.efer &= !efer::LMA;
    }
    if (old.cr0 ^ new) & (cr0::PG | cr0::CD | cr0::NW) != 0 || n.mode() != PagingMode::Pae {
        refresh_pdptes(mem, &mut n, cpu)?;
    }
    Ok(n)
}

/// CLTS: clears CR0.TS.
pub fn clts(old: &GuestCtl) -> GuestCtl {
    GuestCtl {
        cr0: old.cr0 & !cr0::TS,
        ..*old
    }
}

/// LMSW: loads PE, MP, EM and TS from the low four bits of `value`; PE
/// can be set but not cleared.
pub fn lmsw(old: &GuestCtl, value: u16) -> GuestCtl {
    let v = u64::from(value);
    let low = cr0::PE | cr0::MP | cr0::EM | cr0::TS;
    let cr0 = (old.cr0 & !(low & !cr0::PE)) | (v & low);
    GuestCtl { cr0, ..*old }
}

/// MOV to CR3. `value` is the source operand (32 bits outside long mode).
pub fn mov_to_cr3<M: GuestMemory + ?Sized>(
    mem: &mut M,
    old: &GuestCtl,
    cpu: &CpuModel,
    value: u64,
) -> Result<GuestCtl, GeneralProtection> {
    let mut n = *old;
    if old.mode() == PagingMode::Long {
        if value & crate::regs::bits(u32::from(cpu.max_phys_bits), 63) != 0 {
            return Err(GeneralProtection);
        }
        n.cr3 = value;
    } else {
        n.cr3 = value & 0xffff_ffff;
    }
    refresh_pdptes(mem, &mut n, cpu)?;
    Ok(n)
}

/// MOV to CR4.
pub fn mov_to_cr4<M: GuestMemory + ?Sized>(
    mem: &mut M,
    old: &GuestCtl,
    cpu: &CpuModel,
    value: u64,
) -> Result<GuestCtl, GeneralProtection> {
    if value & !cpu.cr4_supported != 0 {
        return Err(GeneralProtection);
    }
    if old.efer & efer::LMA != 0 && value & cr4::PAE == 0 {
        return Err(GeneralProtection);
    }
    let mut n = *old;
    n.cr4 = value;
    if (old.cr4 ^ value) & (cr4::PAE | cr4::PGE | cr4::PSE) != 0 || n.mode() != PagingMode::Pae {
        refresh_pdptes(mem, &mut n, cpu)?;
    }
    Ok(n)
}

/// WRMSR to EFER. LMA is read-only: the written bit is ignored.
pub fn write_efer(
    old: &GuestCtl,
    cpu: &CpuModel,
    value: u64,
) -> Result<GuestCtl, GeneralProtection> {
    if value & !cpu.efer_supported != 0 {
        return Err(GeneralProtection);
    }
    let new = (value & !efer::LMA) | (old.efer & efer::LMA);
    if old.cr0 & cr0::PG != 0 && (old.efer ^ new) & efer::LME != 0 {
        return Err(GeneralProtection);
    }
    Ok(GuestCtl { efer: new, ..*old })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::walk::NotRam;

    /// Flat test memory.
    struct Ram(Vec<u8>);

    impl Ram {
        fn new(bytes: usize) -> Self {
            Self(vec![0; bytes])
        }
        fn put64(&mut self, gpa: u64, v: u64) {
            self.write_phys(gpa, &v.to_le_bytes()).unwrap();
        }
    }

    impl GuestMemory for Ram {
        fn ram_bytes(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), NotRam> {
            guest_walk::Ram::new(&mut self.0).read_phys(gpa, buf)
        }
        fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), NotRam> {
            guest_walk::Ram::new(&mut self.0).write_phys(gpa, data)
        }
    }

    const CPU: CpuModel = CpuModel {
        max_phys_bits: 40,
        gb_pages: true,
        cr4_supported: cr4::SUPPORTED,
        efer_supported: efer::SUPPORTED,
        pdptes_on_walk: false,
        pdpte_bits_8_5_ignored: false,
    };

    /// AMD with nested paging loads no PDPTE registers: a reserved bit in a
    /// present PDPTE is no #GP at MOV CR3, CR0 or CR4 (the walk faults).
    #[test]
    fn without_pdpte_registers_mov_to_cr_never_checks_them() {
        let cpu = CpuModel {
            pdptes_on_walk: true,
            ..CPU
        };
        let mut ram = Ram::new(1 << 16);
        ram.put64(0x1000, 0x5001 | 1 << 1);
        ram.put64(0x1018, 0x6001 | 1 << 52);
        let c = GuestCtl::RESET;
        let c = mov_to_cr0(&mut ram, &c, &cpu, cr0::PE, false).unwrap();
        let c = mov_to_cr4(&mut ram, &c, &cpu, cr4::PAE).unwrap();
        let c = mov_to_cr3(&mut ram, &c, &cpu, 0x1000).unwrap();
        let c = mov_to_cr0(&mut ram, &c, &cpu, cr0::PE | cr0::PG, false).unwrap();
        assert_eq!(c.mode(), PagingMode::Pae);
        assert_eq!(c.pdptes, [0; 4]);
        let c = mov_to_cr3(&mut ram, &c, &cpu, 0x1000).unwrap();
        let c = mov_to_cr4(&mut ram, &c, &cpu, cr4::PAE | cr4::PGE).unwrap();
        assert_eq!(c.pdptes, [0; 4]);
        // The same tables with PDPTE registers: #GP.
        assert_eq!(
            mov_to_cr3(&mut ram, &c, &CPU, 0x1000),
            Err(GeneralProtection)
        );
    }

    #[test]
    fn entering_long_mode() {
        let mut ram = Ram::new(1 << 16);
        let c = GuestCtl::RESET;
        let c = mov_to_cr0(&mut ram, &c, &CPU, cr0::PE, false).unwrap();
        let c = write_efer(&c, &CPU, efer::LME | efer::NXE).unwrap();
        assert_eq!(
            mov_to_cr0(&mut ram, &c, &CPU, cr0::PE | cr0::PG, false),
            Err(GeneralProtection),
            "PAE first"
        );
        let c = mov_to_cr4(&mut ram, &c, &CPU, cr4::PAE).unwrap();
        let c = mov_to_cr3(&mut ram, &c, &CPU, 0x1000).unwrap();
        let c = mov_to_cr0(&mut ram, &c, &CPU, cr0::PE | cr0::PG, false).unwrap();
        assert_eq!(c.mode(), PagingMode::Long);
        assert_eq!(c.cr0 & cr0::ET, cr0::ET);
        assert_eq!(write_efer(&c, &CPU, efer::NXE), Err(GeneralProtection));
        assert_eq!(mov_to_cr4(&mut ram, &c, &CPU, 0), Err(GeneralProtection));
        assert_eq!(
            mov_to_cr3(&mut ram, &c, &CPU, 1 << 45),
            Err(GeneralProtection)
        );
        assert_eq!(
            mov_to_cr0(&mut ram, &c, &CPU, cr0::PE, true),
            Err(GeneralProtection),
            "no leaving long mode from 64-bit code"
        );
        let c = mov_to_cr0(&mut ram, &c, &CPU, cr0::PE, false).unwrap();
        assert_eq!(c.mode(), PagingMode::Off);
        assert_eq!(c.efer & efer::LMA, 0);
    }

    #[test]
    fn pae_loads_pdptes_and_checks_them() {
        let mut ram = Ram::new(1 << 16);
        ram.put64(0x2020, 0x5000 | 1);
        ram.put64(0x2028 + 16, 0x6000 | 1);
        let c = GuestCtl {
            cr0: cr0::PE | cr0::ET,
            cr4: cr4::PAE,
            ..Default::default()
        };
        let c = mov_to_cr3(&mut ram, &c, &CPU, 0x2020).unwrap();
        assert_eq!(c.pdptes, [0; 4], "not loaded while paging is off");
        let c = mov_to_cr0(&mut ram, &c, &CPU, cr0::PE | cr0::PG, false).unwrap();
        assert_eq!(c.pdptes, [0x5001, 0, 0, 0x6001]);
        // A PDPTE with R/W (reserved in PAE PDPTEs) makes MOV CR3 fault.
        ram.put64(0x3000, 0x5000 | 3);
        assert_eq!(
            mov_to_cr3(&mut ram, &c, &CPU, 0x3000),
            Err(GeneralProtection)
        );
        // Not present with garbage is fine.
        ram.put64(0x3000, 0x5000 | 2);
        assert!(mov_to_cr3(&mut ram, &c, &CPU, 0x3000).is_ok());
        // Memory changes take effect only on reload.
        ram.put64(0x2020, 0);
        assert_eq!(c.pdptes[0], 0x5001);
        let c2 = mov_to_cr4(&mut ram, &c, &CPU, cr4::PAE | cr4::PGE).unwrap();
        assert_eq!(c2.pdptes[0], 0, "changing PGE reloads them");
        let c3 = mov_to_cr4(&mut ram, &c, &CPU, cr4::PAE | cr4::OSFXSR).unwrap();
        assert_eq!(c3.pdptes[0], 0x5001, "other CR4 bits do not");
    }

    #[test]
    fn cr0_and_cr4_checks() {
        let mut ram = Ram::new(4096);
        let c = GuestCtl::RESET;
        assert_eq!(
            mov_to_cr0(&mut ram, &c, &CPU, cr0::PG, false),
            Err(GeneralProtection)
        );
        assert_eq!(
            mov_to_cr0(&mut ram, &c, &CPU, cr0::NW, false),
            Err(GeneralProtection)
        );
        assert_eq!(
            mov_to_cr0(&mut ram, &c, &CPU, 1 << 32, false),
            Err(GeneralProtection)
        );
        assert_eq!(
            mov_to_cr4(&mut ram, &c, &CPU, cr4::SMEP),
            Err(GeneralProtection)
        );
        let c = mov_to_cr0(&mut ram, &c, &CPU, cr0::PE | cr0::TS, false).unwrap();
        assert_eq!(clts(&c).cr0 & cr0::TS, 0);
        let l = lmsw(&c, 0);
        assert_eq!(l.cr0 & cr0::PE, cr0::PE, "LMSW cannot clear PE");
        assert_eq!(l.cr0 & cr0::TS, 0);
        assert_eq!(lmsw(&GuestCtl::RESET, 0xf).cr0 & 0xf, 0xf);
    }
}
